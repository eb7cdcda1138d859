"""Chat with a run's tuned model and its base, as they were trained: which weights a chat loads, the
conversations kept in the run directory, a conversation saved as a training example (session, light), the
model subprocess the app or the command line owns through a pipe (client, light), and that subprocess
(server: heavy, its own process, JSON lines on stdin and stdout)."""
