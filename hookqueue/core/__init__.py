"""hookqueue's core: mechanism only (store, models, hooks, queue facade, worker, CLI).

The core decides no policy; every choice is a hook answered by a plugin. It never imports
``hookqueue.plugins`` or ``hookqueue.contrib``: it finds them through the plugin manager.
"""
