"""Tests of service/stackone (client, budgets, retries) and of StackOne's contract."""
