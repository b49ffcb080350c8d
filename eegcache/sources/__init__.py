"""Where recordings come from: tree discovery, the TUSZ, BIDS and plain-folder layouts, datasets (a tree's identity
wherever it moves), EDF reading, seizure annotations, and the synthetic TUSZ-like trees the demo and tests use."""
