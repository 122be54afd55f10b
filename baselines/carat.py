"""CARAT (Peng et al., AAAI 2024): being written (issue 23); registers nothing yet."""
