from rundock.submitter.cli import main

main()
