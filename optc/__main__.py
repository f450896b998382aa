from optc.cli import main

main()
