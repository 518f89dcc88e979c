from reidcam.app.cli import main

main()
