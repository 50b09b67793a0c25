"""Operations: the status snapshot and the money/delivery invariant checker."""
