"""The only code that changes state. Views, API viewsets and commands call these functions."""
