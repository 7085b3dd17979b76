from modelium.cli.main import main

main()
