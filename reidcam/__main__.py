from reidcam.app.cli import main

if __name__ == "__main__":  # decoder processes (spawn) import the main module again
    main()
