from edgesync.cli import main

main()
