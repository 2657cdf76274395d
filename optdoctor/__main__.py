from optdoctor.cli import main

main()
