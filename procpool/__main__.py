from procpool.entrypoints.cli import main

main(prog_name="procpool")
