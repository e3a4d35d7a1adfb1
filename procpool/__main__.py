from procpool.infrastructure.cli import main

main(prog_name="procpool")
