"""The face of tunedeck: the Textual app (app.py, modes, screens/, widgets/, messages) and the command line (cli/). Never imports torch & co.; heavy work runs in engine subprocesses."""
