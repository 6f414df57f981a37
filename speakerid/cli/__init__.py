"""The `speakerid` console command (`speakerid.cli.main`), one module per subcommand, shipped with the
package so that an installed speakerid has it too (`python -m speakerid.cli.main ...` without the script)."""
