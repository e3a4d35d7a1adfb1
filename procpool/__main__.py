from procpool.infrastructure.cli import main

main()
