"""reidcam.reid.data"""
