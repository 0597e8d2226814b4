from comptlib.cli import main

main()
