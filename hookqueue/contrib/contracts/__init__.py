"""Reusable contract test classes for plugin authors: subclass one in your plugin's tests.

Each module holds the contract for one plugin kind (retry policy, scheduler, metrics
exporter). hookqueue's own plugins are tested through the same classes.
"""
