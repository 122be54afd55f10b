"""TAILOR (Zhang et al., AAAI 2022): being written (issue 23); registers nothing yet."""
