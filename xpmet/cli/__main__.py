from xpmet.cli import main

main()
