"""reidcam.app"""
