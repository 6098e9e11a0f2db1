"""Subscriptions the service keeps: named, durable consumers of the event log with
acknowledgements, redelivery, parking, and work shared across consumers in account order."""
