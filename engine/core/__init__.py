"""Helpers every room uses: private directories, atomic writes, the private umask, workspace and cache paths, values quoted in messages. Light."""
