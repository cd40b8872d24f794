"""Verify a bundle the way the MONAI model zoo's CI does, offline, and list everything that fails.

    python -m ci.verify_bundle bundles/<name> [--schema PATH]

Checks, in order: required files; ``large_files.yml`` (every entry a ``models/`` path, an http(s) URL and a sha256,
see ``ci/large_files.py``); metadata rules (``version`` in ``changelog``, ``required_packages_version`` only,
no ``#`` in any string because MONAI rewrites it); metadata against MONAI's schema (offline copy, see
``zoo.find_schema``; skipped with a clear message when no copy is found); ``logging.conf`` uses only standard
handler classes with literal arguments (``fileConfig`` evaluates them as code); every config parses and the standard
train / evaluate / inference stacks expose MONAI's required properties; ``network_def`` instantiates, identically
in train.json and inference.json; ``verify_net_in_out``; TorchScript export with ``ckpt_export`` that loads back,
carries metadata.json and inference.json, and matches eager output. Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import contextlib
import re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from ci import large_files, zoo
from common.ablation import load_grid

REQUIRED_FILES = (
    "LICENSE",
    "large_files.yml",
    "configs/metadata.json",
    "configs/inference.json",
    "configs/train.json",
    "configs/evaluate.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
    "configs/demo.json",
    "docs/README.md",
    "docs/data_license.txt",
)
DEMO_KEYS = {"synthetic", "train", "evaluate", "inference", "overlay"}
# "@train#dataset", "%train#postprocessing", "%configs/segresnet.json#network_def"
REFERENCE = re.compile(r"@[\w#]+|%[\w./-]*#[\w#]+|%\w+")


# logging.config.fileConfig, which `monai.bundle run` applies to configs/logging.conf, eval()s each handler's
# class, args and kwargs: a logging.conf is code. Only these handler classes and literal arguments pass.
SAFE_HANDLER_CLASSES = {
    f"{prefix}{name}"
    for name, prefixes in {
        "StreamHandler": ("", "logging."),
        "FileHandler": ("", "logging."),
        "NullHandler": ("", "logging."),
        "RotatingFileHandler": ("handlers.", "logging.handlers."),
        "TimedRotatingFileHandler": ("handlers.", "logging.handlers."),
    }.items()
    for prefix in prefixes
}
SAFE_STREAMS = {"sys.stdout", "sys.stderr"}


def logging_conf_problems(path: Path) -> list[str]:
    """What in a ``logging.conf`` would make ``fileConfig`` run more than a standard handler with literal arguments."""
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(path.read_text(), source=str(path))
    except configparser.Error as e:
        return [f"is not an INI file ({e})"]
    problems = []
    for section in parser.sections():
        options = parser[section]
        if section.startswith("handler_"):
            if options.get("class", "").strip() not in SAFE_HANDLER_CLASSES:
                problems.append(
                    f"[{section}] class {options.get('class')!r} is not one of {sorted(SAFE_HANDLER_CLASSES)}"
                )
            for key, default in (("args", "()"), ("kwargs", "{}")):
                if not _literal_arguments(options.get(key, default)):
                    problems.append(
                        f"[{section}] {key} {options.get(key)!r} is not literal values (or sys.stdout/stderr)"
                    )
            if "target" in options:
                problems.append(f"[{section}] has target {options['target']!r}: memory handlers are not needed here")
        elif section.startswith("formatter_") and options.get("class", "logging.Formatter") != "logging.Formatter":
            problems.append(f"[{section}] class {options['class']!r} is not logging.Formatter")
    return [f"{path.name} {p}" for p in problems]


def _literal_arguments(text: str) -> bool:
    """``text`` is a literal (tuple, dict, ...) whose only names are the streams ``sys.stdout`` / ``sys.stderr``."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return False
    items = tree.elts if isinstance(tree, ast.Tuple) else tree.values if isinstance(tree, ast.Dict) else [tree]
    for item in items:
        if ast.unparse(item) in SAFE_STREAMS:
            continue
        try:
            ast.literal_eval(item)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return False
    if isinstance(tree, ast.Dict):
        return all(isinstance(k, ast.Constant) for k in tree.keys)
    return True


class Skipped(Exception):
    """A check that could not run here; reported, but not a failure."""


def _strings(node: object, where: str = "", include_keys: bool = False) -> Iterator[tuple[str, str]]:
    """Every string in a parsed JSON document, with its location (keys too when asked)."""
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, dict):
        for key, value in node.items():
            if include_keys:
                yield f"{where}/{key}", key
            yield from _strings(value, f"{where}/{key}", include_keys)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{where}/{i}", include_keys)


class BundleVerifier:
    """Runs every check on one bundle directory and collects the outcome of each."""

    def __init__(self, bundle: Path, schema: Path | None):
        self.bundle = bundle.resolve()
        self.configs = self.bundle / "configs"
        self.meta_file = self.configs / "metadata.json"
        self.schema = schema
        self.failures: list[str] = []
        self.skipped: list[str] = []

    def run(self) -> bool:
        # Configs import `common`: the bundle's own vendored copy wins over the repository's, as in a packaged zip.
        for path in (zoo.REPO_ROOT, self.bundle):
            if str(path) not in sys.path:
                sys.path.insert(0, str(path))
        if not self._check("files", self.check_files):
            return False
        for name, check in [
            ("large_files.yml", self.check_large_files),
            ("metadata", self.check_metadata),
            ("schema", self.check_schema),
            ("demo.json", self.check_demo_spec),
            ("logging.conf", self.check_logging_conf),
            ("configs", self.check_configs),
            ("network_def", self.check_network_def),
            ("verify_net_in_out", self.check_net_in_out),
            ("torchscript", self.check_torchscript),
        ]:
            self._check(name, check)
        return not self.failures

    def _check(self, name: str, check: Callable[[], str | None]) -> bool:
        try:
            detail = check()
        except Skipped as e:
            self.skipped.append(f"{name}: {e}")
            print(f"SKIP {name}: {e}", flush=True)
            return True
        except Exception as e:  # a verifier reports every failure rather than stopping at the first
            message = f"{name}: {type(e).__name__}: {e}".strip()
            self.failures.append(message)
            print(f"FAIL {message}", flush=True)
            if not isinstance(e, (AssertionError, ValueError, FileNotFoundError, KeyError)):
                traceback.print_exc()
            return False
        print(f"ok   {name}{': ' + detail if detail else ''}", flush=True)
        return True

    def check_files(self) -> str:
        missing = [f for f in REQUIRED_FILES if not (self.bundle / f).is_file()]
        if missing:
            raise FileNotFoundError(f"missing in {self.bundle}: {', '.join(missing)}")
        return f"{len(REQUIRED_FILES)} required files present"

    def check_large_files(self) -> str:
        entries = large_files.read_large_files(self.bundle)
        if not entries:
            return "no weights published yet (empty list)"
        return ", ".join(f"{e['path']} <- {e['url']}" for e in entries)

    def check_logging_conf(self) -> str:
        problems = logging_conf_problems(self.configs / "logging.conf")
        if problems:
            raise ValueError("; ".join(problems))
        return "standard handlers, literal arguments (fileConfig evaluates them)"

    def check_metadata(self) -> str:
        meta = zoo.load_json(self.meta_file)
        problems = []
        version = meta.get("version")
        if not version or version not in meta.get("changelog", {}):
            problems.append(f"version {version!r} has no entry in changelog")
        if "optional_packages_version" in meta:
            # MONAI renames it to required_packages_version and silently replaces the real one.
            problems.append("use required_packages_version only, not optional_packages_version")
        for config in sorted(self.configs.glob("*.json")):
            content = zoo.load_json(config)
            if "axes" in content:  # an ablation grid: its "id" fields are config ids, its settings are overlays
                content = {a: spec["settings"] for a, spec in load_grid(config)["axes"].items()}
            for where, text in _strings(content, include_keys=config.name == "metadata.json"):
                # In configs '#' is the ID separator of references; anywhere else MONAI rewrites it to '::'.
                if "#" in (text if config.name == "metadata.json" else REFERENCE.sub("", text)):
                    problems.append(f"{config.name}{where}: '#' in {text!r} would be rewritten by MONAI")
        if problems:
            raise ValueError("; ".join(problems))
        return f"version {version}"

    def check_schema(self) -> str:
        if self.schema is None:
            raise Skipped(
                f"no offline copy of {zoo.SCHEMA_NAME} (looked at --schema, ${zoo.SCHEMA_ENV}, ../shared/monai/)"
            )
        from monai.bundle import verify_metadata

        meta = zoo.load_json(self.meta_file)
        if not str(meta.get("schema", "")).endswith(zoo.SCHEMA_NAME):
            raise ValueError(f"metadata schema should be {zoo.SCHEMA_NAME}, found {meta.get('schema')!r}")
        with tempfile.TemporaryDirectory() as tmp:
            # verify_metadata downloads the schema unless a file with the right hash is already at `filepath`.
            local = Path(tmp) / zoo.SCHEMA_NAME
            shutil.copyfile(self.schema, local)
            verify_metadata(meta_file=str(self.meta_file), filepath=str(local), hash_val=zoo.SCHEMA_MD5)
        return f"valid against {self.schema}"

    def check_demo_spec(self) -> str:
        spec = zoo.load_json(self.configs / "demo.json")
        missing = DEMO_KEYS - spec.keys()
        if missing:
            raise ValueError(f"demo.json lacks {sorted(missing)}")
        if "dataset" not in spec["synthetic"]:
            raise ValueError("demo.json synthetic needs a 'dataset' (brats, btcv or visible_korean)")
        return "demo spec complete"

    def _wrong_properties(self, files: list[str], workflow_type: str) -> list[str]:
        """MONAI's property check without instantiating anything, so that no dataset is needed.

        ``ConfigWorkflow.check_properties`` builds every required component (datasets included); here a required
        property only has to exist, and an optional one must be referenced where MONAI expects it.
        """
        from monai.bundle import ConfigWorkflow
        from monai.utils import BundleProperty, BundlePropertyConfig

        workflow = ConfigWorkflow(
            config_file=[str(self.configs / f) for f in files],
            meta_file=str(self.meta_file),
            logging_file=False,
            workflow_type=workflow_type,
        )
        workflow.parser.parse(reset=True)  # normalises '#' to '::' in references; instantiates nothing
        wrong = []
        for name, prop in workflow.properties.items():
            if prop.get(BundleProperty.REQUIRED, False):
                if prop[BundlePropertyConfig.ID] not in workflow.parser:
                    wrong.append(f"{name} (missing {prop[BundlePropertyConfig.ID]})")
            else:
                try:
                    referenced = workflow._check_optional_id(name=name, property=prop)
                except AttributeError:  # MONAI expects a string there; a literal (e.g. interval: 1) is no reference
                    referenced = False
                if not referenced:
                    wrong.append(f"{name} (not referenced from {prop.get(BundlePropertyConfig.REF_ID)})")
        return wrong

    def check_configs(self) -> str:
        from monai.bundle import ConfigParser

        for config in sorted(self.configs.glob("*.json")):
            if config.name not in ("metadata.json", "demo.json"):
                ConfigParser.load_config_file(str(config))
        problems = []
        stacks = [(["inference.json"], "infer"), (["train.json"], "train"), (["train.json", "evaluate.json"], "train")]
        for files, workflow_type in stacks:
            wrong = self._wrong_properties(files, workflow_type)
            if wrong:
                problems.append(f"{'+'.join(files)}: {', '.join(wrong)}")
        if problems:
            raise ValueError("; ".join(problems))
        return "configs parse; train, train+evaluate and inference define MONAI's properties"

    def _network(self, config: str):
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.configs / config))
        parser["bundle_root"] = str(self.bundle)
        return parser.get_parsed_content("network_def")

    def check_network_def(self) -> str:
        train_net, infer_net = self._network("train.json"), self._network("inference.json")
        train_shapes = {k: tuple(v.shape) for k, v in train_net.state_dict().items()}
        infer_shapes = {k: tuple(v.shape) for k, v in infer_net.state_dict().items()}
        if train_shapes != infer_shapes:
            raise ValueError("network_def differs between train.json and inference.json: trained weights won't load")
        n_params = sum(p.numel() for p in infer_net.parameters())
        return f"{type(infer_net).__name__}, {n_params:,} parameters"

    def check_net_in_out(self) -> str:
        from monai.bundle import verify_net_in_out

        verify_net_in_out(
            net_id="network_def",
            meta_file=str(self.meta_file),
            config_file=str(self.configs / "inference.json"),
            device="cpu",
            bundle_root=str(self.bundle),
        )
        return "input/output channels and dtype match metadata"

    def check_torchscript(self) -> str:
        import torch
        from monai.bundle import ckpt_export
        from monai.bundle.scripts import _get_fake_spatial_shape
        from monai.data import load_net_with_metadata

        meta = zoo.load_json(self.meta_file)["network_data_format"]["inputs"]["image"]
        shape = (1, meta["num_channels"], *_get_fake_spatial_shape(meta["spatial_shape"], p=1, n=2, any=32))
        net = self._network("inference.json").eval()
        with tempfile.TemporaryDirectory() as tmp:
            ckpt, exported = Path(tmp) / "model.pt", Path(tmp) / "model.ts"
            torch.save(net.state_dict(), ckpt)
            how = "scripted"
            export = dict(
                net_id="network_def",
                filepath=str(exported),
                ckpt_file=str(ckpt),
                meta_file=str(self.meta_file),
                config_file=str(self.configs / "inference.json"),
                bundle_root=str(self.bundle),
            )
            with contextlib.redirect_stderr(sys.stdout):
                try:
                    ckpt_export(**export)
                except Exception as e:  # some networks (e.g. Swin UNETR) can only be traced, as in the model zoo
                    how = f"traced (scripting failed: {type(e).__name__})"
                    ckpt_export(**export, use_trace=True, input_shape=list(shape))
            loaded, loaded_meta, extra = load_net_with_metadata(str(exported), more_extra_files=("inference.json",))
            if not loaded_meta or not extra.get("inference.json"):
                raise ValueError("exported TorchScript lacks extra/metadata.json or extra/inference.json")
            x = torch.rand(shape)
            with torch.no_grad():
                expected, actual = net(x), loaded(x)
            if not torch.allclose(expected, actual, rtol=1e-4, atol=1e-4):
                diff = (expected - actual).abs().max().item()
                raise ValueError(f"TorchScript output differs from eager by up to {diff:.3g} on input {list(shape)}")
        return f"{how}; matches eager on {list(shape)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="bundle directory, e.g. bundles/cohra_unet_brats")
    default = f"${zoo.SCHEMA_ENV}, then ../shared/monai/"
    parser.add_argument("--schema", help=f"offline copy of {zoo.SCHEMA_NAME} (default: {default})")
    args = parser.parse_args(argv)
    if not (args.bundle / "configs").is_dir():
        print(f"FAIL {args.bundle}: not a bundle directory (expected {args.bundle}/configs/)")
        return 1
    verifier = BundleVerifier(args.bundle, zoo.find_schema(args.schema))
    print(f"verifying {verifier.bundle}", flush=True)
    ok = verifier.run()
    if verifier.skipped:
        print("skipped: " + "; ".join(verifier.skipped))
    if ok:
        print(f"PASSED {verifier.bundle.name}")
        return 0
    print(f"FAILED {verifier.bundle.name}: {len(verifier.failures)} check(s)")
    for failure in verifier.failures:
        print(f"  - {failure}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
