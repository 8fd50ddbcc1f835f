"""StreamLoop's command line: ``streamloop --help``."""
