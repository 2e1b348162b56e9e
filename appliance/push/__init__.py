"""MQTT push: the embedded broker and its access rules, the notifier, the app wiring."""
