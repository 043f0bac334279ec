"""``python -m renewer.solvers.providers`` prints the README's DNS provider table."""

from renewer.solvers.providers import markdown_table

print(markdown_table(), end="")
