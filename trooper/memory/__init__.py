"""Three-layer memory for local turns: Anchor, SITREP, Tail."""
