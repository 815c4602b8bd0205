"""msht-cds: a CDS Hooks 2.0 service that helps paediatricians recognise possible child
modern slavery and human trafficking and follow the referral pathway for their nation."""

__version__ = "0.1.0"

__all__ = ["__version__"]
