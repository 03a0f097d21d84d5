"""Every write about a referral's life. Split by subject; import from the submodule."""
