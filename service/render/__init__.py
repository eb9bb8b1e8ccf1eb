"""What a user sees: a result as text, terminal tables, exports and plots. Nothing here reads or writes."""
