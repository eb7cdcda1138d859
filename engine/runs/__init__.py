"""The run-directory protocol (DESIGN section 2): status, events, control commands, the workspace's runs, and the detached launch. Light: readers never import torch."""
