from remflow.cli import main

main()
