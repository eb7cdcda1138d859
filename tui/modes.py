"""The app's modes in the order of their number keys (1 GPU ... 6 Chat): the one list the
app's bindings and command palette, and the mode bar, are made from."""

MODES = {"gpu": "GPU", "plan": "Plan", "data": "Data", "runs": "Runs", "eval": "Eval", "chat": "Chat"}
