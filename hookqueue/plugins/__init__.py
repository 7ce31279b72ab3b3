"""First-party plugins, loaded through the ``hookqueue`` entry-point group like any other."""
