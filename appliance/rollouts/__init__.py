"""Staged rollouts: selection and waves (pure), and the engine that advances them."""
