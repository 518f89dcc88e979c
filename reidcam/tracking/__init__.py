"""reidcam.tracking"""
