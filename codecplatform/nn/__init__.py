"""Small building blocks shared by generators and discriminators."""
