"""Every method in one ranked table with paired tests, the compare report, ablations."""
