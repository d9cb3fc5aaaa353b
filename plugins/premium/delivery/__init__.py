"""Delivery tracking (§3.3, §3.5, §3.6): polling, webhooks, and the state both update."""
