"""One module per upstream file format; each returns ``list[Recording]`` (see sensors.datasets)."""
