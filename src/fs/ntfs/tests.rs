//! Tests over images built with mkntfs and populated through ntfs-3g.
