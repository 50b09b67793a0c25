"""keysync: the background-job backbone of the game-key shop."""
