"""reidcam.reid.losses"""
