from keysync.cli import main

main()
