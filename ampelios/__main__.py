from ampelios.cli import main

main()
