"""The provider-agnostic sync engine and its request budgets."""
