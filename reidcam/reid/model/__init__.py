"""reidcam.reid.model"""
