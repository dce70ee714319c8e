"""Model building blocks: heads, standardisation, backbones and vision-language encoders."""
