"""reidcam.reid"""
