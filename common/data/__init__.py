"""Dataset readers, datalists and split files for the real on-disk layouts."""
