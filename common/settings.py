"""The settings a user types after ``python -m monai.bundle run``, checked before any data or network is built.

MONAI hands every ``--id value`` pair to the config as python-fire parsed it, and fire knows Python, not the
command line's conventions: ``--resume False`` is a bool, but ``--resume false`` is the string ``'false'``, which
Python reads as true. An id that no config defines is added silently, so ``--epochs_typo 1`` starts a full-length
training, and ``--epochs abc`` fails only after the data and the network have been built, deep in a traceback.

- :func:`flag` is how every boolean setting of the zoo's configs is read (``"$common.settings.flag(@resume)"``):
  ``true``/``false``/``1``/``0`` in any case, and the bools and integers fire makes of them. The same reading
  serves callers that pass strings without the command line (MONAI Label's request parameters).
- :func:`check_command_line` is the first entry of every runnable config's ``initialize``. Under
  ``python -m monai.bundle run`` it reads the command line (and ``--args_file``), loads the stacked config files
  itself, and stops the run with one ``error:`` line per problem and exit status 2 (argparse's), before anything
  else is evaluated, when:

  * an id is defined by none of the stacked configs, naming the closest known ids. An id may still be new when it
    is an argument of the component it is added to (the ``_target_``'s signature accepts it), a key of a plain
    dictionary, or referenced (``@id``) by another value of the same command line; MONAI's own ``run`` arguments
    (``--tracking``, ``--args_file``, ...) and the settings ``--tracking`` adds are known;
  * a boolean setting is given anything but true/false/1/0;
  * a common knob (:data:`RULES`: epochs, batch size, learning rate, ROI size, fold, presets, ...) has the wrong type
    or range, on the command line or in a stacked config file.

  Runs started from Python (``monai.bundle.run(...)``, MONAI Label, MONAI Deploy) pass their settings as Python
  values and are not checked here.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import CommonVersionError, check_common
from common.errors import BadInputError

__all__ = ["RULES", "SettingError", "check_command_line", "command_line_problems", "flag"]

TRUE_SPELLINGS = ("true", "1")
FALSE_SPELLINGS = ("false", "0")

# what create_workflow and ConfigWorkflow take besides monai.bundle.run's own arguments; not config ids either
WORKFLOW_ARGUMENTS = ("workflow_name", "workflow_type", "properties_path")


class SettingError(BadInputError):
    """A setting's value is not one the bundle accepts; the message names the setting and what it expects."""


def _spelled_bool(value: Any) -> bool | None:
    """The bool ``value`` spells (bool, 0/1, or a true/false/1/0 string in any case), ``None`` if it spells none."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        spelled = value.strip().lower()
        if spelled in TRUE_SPELLINGS:
            return True
        if spelled in FALSE_SPELLINGS:
            return False
    return None


def flag(value: Any) -> bool:
    """The bool a boolean setting means: ``True``/``False``, 1/0, or the strings true/false/1/0 in any case.

    Raises:
        SettingError: for any other value (``'yes'``, ``2``, ``None``), rather than Python's truthiness.
    """
    meaning = _spelled_bool(value)
    if meaning is None:
        raise SettingError(f"expected a boolean setting to be true or false (or 1 or 0), got {value!r}")
    return meaning


# --- rules for the common knobs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """What a knob accepts: ``check`` returns ``None`` for a good value, or what was expected."""

    check: Callable[[Any], str | None]


def _integer(minimum: int) -> Rule:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            return f"an integer >= {minimum}"
        return None

    return Rule(check)


def _number(minimum: float, maximum: float | None = None, *, exclusive_minimum: bool = False) -> Rule:
    expected = f"a number {'>' if exclusive_minimum else '>='} {minimum}" + (f" and <= {maximum}" if maximum else "")

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return expected
        too_small = value <= minimum if exclusive_minimum else value < minimum
        return expected if too_small or (maximum is not None and value > maximum) else None

    return Rule(check)


def _positive_list(kind: type | tuple[type, ...], what: str) -> Rule:
    def check(value: Any) -> str | None:
        good = (
            isinstance(value, (list, tuple))
            and len(value) in (2, 3)
            and all(isinstance(v, kind) and not isinstance(v, bool) and v > 0 for v in value)
        )
        return None if good else f"a list of 2 or 3 positive {what}, e.g. [96,96,96]"

    return Rule(check)


def _one_of(choices: Callable[[], Iterable[str]]) -> Rule:
    def check(value: Any) -> str | None:
        allowed = sorted(choices())
        return None if value in allowed else "one of " + ", ".join(repr(c) for c in allowed)

    return Rule(check)


def _names_in(module: str, attribute: str) -> Callable[[], Iterable[str]]:
    """The names of a registry in ``common`` (imported on use, so that this module stays light)."""
    return lambda: getattr(importlib.import_module(module), attribute)


_FLAG = Rule(lambda value: None if _spelled_bool(value) is not None else "true or false (or 1 or 0)")

#: Knobs checked wherever a bundle defines them. Boolean settings need no entry: every id whose value in a
#: config file is a bool is checked with :func:`flag`'s spellings; ``amp`` is listed because some configs compute
#: its default.
RULES: dict[str, Rule] = {
    "amp": _FLAG,
    "epochs": _integer(1),
    "warmup_epochs": _integer(0),
    "kd_start_epoch": _integer(0),
    "val_interval": _integer(1),
    "batch_size": _integer(1),
    "num_workers": _integer(0),
    "samples_per_volume": _integer(1),
    "slices_per_volume": _integer(1),
    "image_size": _integer(8),
    "seed": _integer(0),
    "fold": _integer(0),
    "num_folds": _integer(1),
    "num_validation_cases": _integer(1),
    "corrupted_gt_copies": _integer(0),
    "postprocess_small_et": _integer(0),
    "learning_rate": _number(0, exclusive_minimum=True),
    "overlay_alpha": _number(0, 1),
    "roi_size": _positive_list(int, "integers"),
    "base_roi_size": _positive_list(int, "integers"),
    "spacing": _positive_list((int, float), "numbers"),
    "base_spacing": _positive_list((int, float), "numbers"),
    "fct_preset": _one_of(_names_in("common.networks.fct", "FCT_PRESETS")),
    "eval_split": _one_of(_names_in("common.data", "EVALUATION_SPLITS")),
    "student_modality": _one_of(lambda: ("t1", "t1ce", "t2", "flair")),
    "teacher_dice": _one_of(lambda: ("slices", "volume")),
    "kd_reduction": _one_of(lambda: ("batchmean", "voxel_mean")),
    "base_input": _one_of(lambda: ("labels", "probabilities")),
    "fast_cpu_runtime": _one_of(_names_in("common.fast_inference", "RUNTIMES")),
}


# --- reading the command line --------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    import fire.parser  # what monai.bundle's command line is built on, so values are read as MONAI receives them

    return fire.parser.DefaultParseValue(text)


def _run_arguments() -> list[str]:
    """The named arguments of ``monai.bundle.run``, in order (fire fills them from positional words too)."""
    from monai.bundle.scripts import run

    return [p.name for p in inspect.signature(run).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]


def _command_line_arguments(argv: Sequence[str]) -> dict[str, Any]:
    """``--id value`` / ``--id=value`` pairs of a ``monai.bundle run`` command line, parsed as fire parses them."""
    pairs: dict[str, Any] = {}
    positional = iter(_run_arguments())
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":  # fire's own flags (--help, --trace) follow
            break
        if token.startswith("--"):
            key, has_value, value = token[2:].partition("=")
            if not has_value:
                if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    value, i = argv[i + 1], i + 1
                else:
                    value = "True"  # a bare --id is fire's True
            pairs[key.replace("-", "_") if "#" not in key else key] = _parse_value(value)
        else:
            pairs[next(positional, f"argument {token}")] = _parse_value(token)
        i += 1
    return pairs


def _load(path_or_paths: Any) -> dict:
    """Config files merged as MONAI merges them (``+id`` appends, ``a#b`` keys nest)."""
    from monai.bundle import ConfigParser

    return ConfigParser.load_config_files(path_or_paths)


def _load_one(path: str) -> dict:
    """One config file as written (an overlay's ``a#b`` keys are not resolved: they may need the files before it)."""
    from monai.bundle import ConfigParser

    return ConfigParser.load_config_file(path)


def _as_files(config_file: Any) -> list[str]:
    if isinstance(config_file, str):
        return [config_file]
    return [str(f) for f in config_file]


_MISSING = object()


def _lookup(config: Any, id_: str) -> Any:
    node = config
    for part in id_.split("#"):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _all_ids(config: Any, prefix: str = "") -> list[str]:
    ids = []
    items = config.items() if isinstance(config, Mapping) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        id_ = f"{prefix}#{key}" if prefix else str(key)
        ids.append(id_)
        ids.extend(_all_ids(value, id_))
    return ids


def _target_parameters(component: Mapping) -> dict[str, inspect.Parameter] | None:
    """The arguments of a config component's ``_target_``; ``None`` when it takes any (``**kwargs``) or that cannot
    be told without evaluating the config."""
    from monai.bundle.config_item import ComponentLocator, ConfigComponent

    target = component.get("_target_")
    if not isinstance(target, str) or target.startswith(("$", "@", "%")):
        return None
    try:
        name = ConfigComponent(config=dict(component), locator=ComponentLocator()).resolve_module_name()
        module_name, _, attribute = str(name).rpartition(".")
        parameters = inspect.signature(getattr(importlib.import_module(module_name), attribute)).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return dict(parameters)


def _new_id_default(config: Mapping, id_: str, references: str) -> Any:
    """For an id no config defines: the default of the component argument it adds (``None`` when there is none to
    tell), or :data:`_MISSING` when the id may not be new (module docstring)."""
    parent_id, _, last = id_.rpartition("#")
    if f"@{id_}" in references:
        return None
    parent = _lookup(config, parent_id) if parent_id else _MISSING
    if not isinstance(parent, Mapping):
        return _MISSING
    if "_target_" not in parent or last.startswith("_"):  # a plain dictionary, or MONAI's _disabled_, _desc_, ...
        return None
    parameters = _target_parameters(parent)
    if parameters is None:
        return None
    return parameters[last].default if last in parameters else _MISSING


def _closest(id_: str, config: Mapping) -> list[str]:
    parent_id, _, last = id_.rpartition("#")
    parent = _lookup(config, parent_id) if parent_id else config
    if not isinstance(parent, Mapping):
        return difflib.get_close_matches(id_, _all_ids(config), n=3, cutoff=0.6)
    names = [str(k) for k in parent] + list((_target_parameters(parent) or {}) if "_target_" in parent else [])
    matches = difflib.get_close_matches(last, list(dict.fromkeys(names)), n=3, cutoff=0.6)
    return [f"{parent_id}#{m}" if parent_id else m for m in matches]


def _is_expression(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("$", "@", "%"))


def command_line_problems(argv: Sequence[str], cwd: str | os.PathLike = ".") -> list[str]:
    """What is wrong with a ``monai.bundle run`` command line (its arguments after ``run``), one sentence each."""
    arguments = _command_line_arguments(argv)
    args_file = arguments.get("args_file")
    if args_file:
        arguments = {**_load(str(args_file)), **arguments}
    config_file = arguments.get("config_file")
    if not config_file:
        return []  # MONAI itself refuses a run without config files
    files = [f if os.path.isabs(f) else os.path.join(cwd, f) for f in _as_files(config_file)]
    if not all(os.path.isfile(f) for f in files):
        return []  # MONAI names the missing file
    config = _load(files)
    file_values = {f: _load_one(f) for f in files}
    try:
        check_common(Path(files[0]).resolve().parent.parent)  # <bundle>/configs/<file>
    except CommonVersionError as error:
        return [str(error)]

    known_extra: set[str] = set()
    tracking = arguments.get("tracking")
    if tracking:
        from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

        settings = DEFAULT_EXP_MGMT_SETTINGS.get(tracking) if isinstance(tracking, str) else tracking
        if settings is None and isinstance(tracking, str) and os.path.isfile(tracking):
            settings = _load(tracking)
        known_extra = set((settings or {}).get("configs", {}))

    not_ids = {*_run_arguments(), *WORKFLOW_ARGUMENTS}
    overrides = {k: v for k, v in arguments.items() if k not in not_ids and not k.startswith("argument ")}
    references = " ".join(str(v) for v in overrides.values() if isinstance(v, str))
    problems = [f"unexpected argument {k.split(' ', 1)[1]!r} (settings are given as --id value)" for k in arguments
                if k.startswith("argument ")]  # fmt: skip

    for id_, value in overrides.items():
        if id_.startswith("_meta_") or id_ in known_extra:
            continue
        existing = _lookup(config, id_)
        if existing is _MISSING:
            existing = _new_id_default(config, id_, references)
        if existing is _MISSING:
            closest = _closest(id_, config)
            hint = f"; did you mean {' or '.join('--' + c for c in closest)}?" if closest else ""
            problems.append(f"--{id_}: no such setting in {', '.join(Path(f).name for f in files)}{hint}")
            continue
        if _is_expression(value) or id_ in RULES:
            continue
        if isinstance(existing, bool) and _spelled_bool(value) is None:
            problems.append(f"--{id_}: expected true or false (or 1 or 0), got {value!r}")
        elif isinstance(existing, bool) and "#" in id_ and isinstance(value, str):
            # a component argument receives the value as it is: only fire's own bools and 0/1 are safe there
            problems.append(f"--{id_}: write {str(_spelled_bool(value))} here (a component argument takes the value "
                            f"as Python reads it, and {value!r} is a non-empty string)")  # fmt: skip

    for id_, rule in RULES.items():
        value = overrides[id_] if id_ in overrides else _lookup(config, id_)
        if value is _MISSING or _is_expression(value) or (value is None and id_ not in overrides):
            continue
        expected = rule.check(value)
        if expected is None:
            continue
        if id_ in overrides:
            where = f"--{id_}"
        else:
            setting_files = [Path(f).name for f in files if id_ in file_values[f]]
            where = f"{id_} in {setting_files[-1] if setting_files else 'the configs'}"
        problems.append(f"{where}: expected {expected}, got {value!r}")
    return problems


def _is_monai_bundle_run(argv: Sequence[str]) -> bool:
    return len(argv) > 1 and Path(argv[0]).parts[-3:] == ("monai", "bundle", "__main__.py") and argv[1] == "run"


def check_command_line() -> None:
    """Stop a ``python -m monai.bundle run`` whose settings are wrong (module docstring), before any work.

    Prints one ``error:`` line per problem and exits with status 2. Does nothing in runs started from Python.
    """
    if not _is_monai_bundle_run(sys.argv):
        return
    problems = command_line_problems(sys.argv[2:])
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)
